"""Training: state, optimizer, the pure train/eval steps (parallelism wraps them), the loop and
its checkpoints. Needs the `train` extra (`pip install 'resflax[train]'`); without it, importing
any of it is one line naming the extra."""

from resflax.extras import require

require("train", "resflax.train")
