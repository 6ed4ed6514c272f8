"""Input pipelines. Every source yields host-local numpy batches {"image", "label", "mask"}
and can report and restore its position, so that training resumes at the exact example.
Needs the `train` extra (TensorFlow, tensorflow-datasets, scikit-learn's digits)."""

from resflax.extras import require

require("train", "resflax.data")
