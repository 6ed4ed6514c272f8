"""Input pipelines. Every source yields host-local numpy batches {"image", "label", "mask"}
and can report and restore its position, so that training resumes at the exact example."""
