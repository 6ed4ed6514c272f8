"""The defaults every recipe patches. Not a run by itself: use digits.py, cifar10.py, ...

Units: batch sizes are global (all devices and processes); `*_every_steps` count optimizer
steps (0: only at the end); schedule warmup and boundaries are in `schedule.unit`.
"""

from ml_collections import config_dict
from ml_collections.config_dict import placeholder


def pick_model(arg: str, depths, names, family: str) -> str:
    """A recipe's argument: a depth from its table ('56' -> 'resnet56') or a model name from
    `names`; anything else is refused with the valid choices."""
    name = f"resnet{arg}" if arg.isdigit() else arg
    if (arg.isdigit() and int(arg) not in depths) or name not in names:
        raise ValueError(
            f"{family} model {arg!r} is not in the table; valid depths: "
            f"{', '.join(map(str, depths))}, or one of the {family} models: {', '.join(names)}"
        )
    return name


def get_config() -> config_dict.ConfigDict:
    c = config_dict.ConfigDict()
    c.seed = 0
    # A `python -m resflax.convert` output directory to start from (fresh runs only; a resumed
    # run continues from its own checkpoint). A classifier of another class count starts fresh.
    c.init_from = placeholder(str)
    # threefry2x32: JAX's default, the same bits on any number of devices. rbg compiles the
    # initialisation several times faster (5.3 s -> 1.0 s for a small ResNet on CPU) but its
    # bits may depend on the backend and the sharding.
    c.prng_impl = "threefry2x32"

    # A registered model (resflax.list_models()); fields left None keep the registry's value.
    c.model = config_dict.ConfigDict(
        dict(
            name="resnet50",
            stage_sizes=placeholder(tuple),  # e.g. (5, 5, 5): a depth the table lacks
            widths=placeholder(tuple),
            stem_width=placeholder(int),
            scan=placeholder(bool),
            remat=placeholder(bool),
            remat_policy=placeholder(str),
            zero_init_last=placeholder(bool),
            drop_path_rate=placeholder(float),
            dropout_rate=placeholder(float),
            bn_momentum=placeholder(float),
            bn_running_var=placeholder(str),  # "unbiased": torch's running-variance update
        )
    )
    # How the model's operations are computed (resflax.ops.Ops): an execution detail, not the
    # model's identity: a run resumes under another policy. name: auto (the fastest measured
    # for this machine, resolved at start, logged and recorded in summary.json) | plain (JAX's
    # own forms). Fields set here override the named policy's.
    c.ops = config_dict.ConfigDict(
        dict(
            name="auto",
            conv=placeholder(str),  # lax | dot | canonical | onednn
            stem_conv=placeholder(str),  # lax | space_to_depth
            norm=placeholder(str),  # flax | closed
            fuse_relu=placeholder(bool),
            act=placeholder(str),  # relu | relu_stored
            pool=placeholder(str),  # lax | phases
        )
    )

    # name: digits (embedded, offline) | fake (synthetic, for throughput) | fashion_mnist |
    # mnist | kmnist (IDX files, in memory) | cifar10 | cifar100 |
    # imagenet2012 | imagenette (tensorflow-datasets) | image_folder (<folder>/<split>/<class>/).
    c.data = config_dict.ConfigDict(
        dict(
            name="digits",
            # image_folder, imagenet2012, imagenette: "tfdata" (decoding and augmentation on the
            # host's CPU cores) | "dali" (NVIDIA DALI: on the GPU, nvjpeg; the dali extra)
            pipeline="tfdata",
            data_dir=placeholder(
                str
            ),  # tfds data dir; None: $TFDS_DATA_DIR or ~/tensorflow_datasets
            folder=placeholder(str),  # image_folder: the root
            train_split=placeholder(str),  # None: the data set's (train; test or validation)
            eval_split=placeholder(str),
            crop_fraction=0.875,  # ImageNet-style eval: resize to image_size / this, center crop
            mean=placeholder(tuple),  # None: the data set's (0..255 units)
            std=placeholder(tuple),
            shuffle_buffer=10_000,
            cache=False,  # keep the undecoded records in memory after the first epoch
            parallel_calls=-1,  # tf.data map parallelism / DALI threads; -1: autotune / cores
            prefetch=2,  # batches placed on the devices ahead of the step
            test_fraction=0.2,  # digits: held-out share, stratified
            split_seed=0,
            num_classes=placeholder(int),  # fake: classes
            image_size=placeholder(int),  # None: the data set's (32 CIFAR, 224 ImageNet)
            channels=3,
            train_size=1_281_167,  # fake: examples per "epoch" (ImageNet's train split)
            eval_size=512,
            # fashion_mnist | mnist | kmnist (resflax/data/mnist_family.py): the four IDX files
            # in data.folder (None: /usr/share/datasets/<name>, where Debian's
            # dataset-fashion-mnist puts them) | "tfds": tensorflow-datasets' prepared copy.
            reader="idx",
            # None: the data set's ("pad_crop_flip" Fashion-MNIST, "pad_crop" MNIST and KMNIST,
            # which are not mirror symmetric) | "none" | "pad_crop" | "pad_crop_flip"
            augment=placeholder(str),
            pad=4,  # pixels of zero padding before the random crop
            random_erasing=0.0,  # probability of random erasing (Zhong et al. 2017); 0: off
        )
    )

    c.batch_size = 128
    c.eval_batch_size = placeholder(int)  # None: batch_size
    c.num_epochs = placeholder(float)  # exactly one of num_epochs, num_steps
    c.num_steps = placeholder(int)
    c.stop_at_step = placeholder(int)  # end this session there (with a checkpoint); resumable

    c.optimizer = config_dict.ConfigDict(
        dict(
            name="sgd",  # sgd | adamw | lars
            learning_rate=0.1,
            reference_batch=placeholder(int),  # lr * batch_size / reference_batch (Goyal et al.)
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            decay_norm_and_bias=False,
            grad_clip_norm=placeholder(float),
            b1=0.9,
            b2=0.999,
            trust_coefficient=0.001,
        )
    )
    c.schedule = config_dict.ConfigDict(
        dict(
            name="cosine",  # constant | piecewise | cosine
            unit="epochs",  # of warmup and boundaries: epochs | steps
            warmup=0.0,
            boundaries=(),  # piecewise: multiply by decay_factor at each
            decay_factor=0.1,
            end_learning_rate=0.0,
        )
    )
    c.label_smoothing = 0.0
    # Population training (docs/populations.md): `size` members of this model trained together
    # in one jitted step (vmap over their states), for seeds with error bars and hyperparameter
    # sweeps in one program. size None: a single run. Per-member values, a tuple of `size`
    # (empty: every member takes the base value; seeds default to seed, seed + 1, ...).
    c.population = config_dict.ConfigDict(
        dict(
            size=placeholder(int),
            seed=(),
            learning_rate=(),
            weight_decay=(),
            momentum=(),
            label_smoothing=(),
            # shared: every member trains on the same batches (one input pipeline);
            # own: member k reads the data in the order of its own seed, as a run would.
            data_order="shared",
            # How one step computes the members (the same function; an execution detail):
            # vmap (batched: GPU/TPU) | map (one after another: CPU) | auto (by backend).
            batching="auto",
        )
    )

    c.dtype = "float32"  # float32 | bfloat16 (compute; params, BN stats and loss stay float32)
    c.parallel = "jit"  # jit (Mesh + NamedSharding) | shard_map (per-device step) | pmap
    # Added to XLA_FLAGS before JAX starts (flags already in XLA_FLAGS win; "" adds none).
    # YNNPACK for products, convolutions and reductions: ResNet-50 CPU step 13.9 -> 10.6 s,
    # 6.1 s with 1x1 convolutions as products (resflax/runtime/xla_flags.py; docs/performance.md).
    c.xla_cpu_flags = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    # auto | retain | system. retain: malloc keeps freed memory for the next step instead of
    # handing it back to the kernel, which zero-fills it again (ResNet-50 CPU step 6.1 -> 4.9 s;
    # resflax/runtime/host_memory.py). auto: retain when JAX can only run on the CPU.
    c.host_malloc = "auto"
    # One heap can fragment and grow by a step's buffer now and then; past this multiple of
    # the resident size at the first log step, malloc's defaults come back.
    c.host_malloc_max_growth = 2.0
    # Several processes (hosts): enabled=True alone suffices on TPU pods and SLURM; elsewhere
    # give the coordinator's host:port, the process count and this process's id.
    c.distributed = config_dict.ConfigDict(
        dict(
            enabled=False,
            coordinator_address=placeholder(str),
            num_processes=placeholder(int),
            process_id=placeholder(int),
            initialization_timeout=300,  # seconds to wait for all processes to join
            heartbeat_timeout_seconds=100,  # a silent peer is declared dead after this
        )
    )
    c.num_devices = placeholder(int)  # None: all local devices

    c.log_every_steps = 50
    c.eval_every_steps = 0
    c.checkpoint_every_steps = 1000
    c.max_to_keep = 3
    c.async_checkpointing = True
    # Comma-separated keys a resumed run may change beyond resflax.train.resume.MAY_CHANGE
    # (e.g. "optimizer.learning_rate"); logged and kept in <workdir>/config_history.jsonl.
    c.allow_changes_on_resume = ""
    return c
