"""The GPU benchmark's pure parts, checked here since the GPU itself is lent only now and then:
variant parsing (execution policies, batch, model fields), the table's arithmetic, the profile's
kernel kinds, and the MAC constant."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.benchmarks.gpu import gpu_bench
from experiments.benchmarks.gpu.gpu_profile import kernel_kind
from resflax.models import cost
from resflax.ops import Ops


def test_resnet50_macs_constant_is_the_zoo_count():
    assert cost("resnet50").macs == gpu_bench.RESNET50_MACS


def test_parse_variant():
    assert gpu_bench.parse_variant("default") == {"ops": "auto", "batch": None, "model": {}}
    assert gpu_bench.parse_variant("stem_conv=lax,batch=512,conv=dot,fuse_relu=false") == {
        "ops": "stem_conv=lax,conv=dot,fuse_relu=false", "batch": 512, "model": {},
    }  # fmt: skip
    assert gpu_bench.parse_variant("plain,norm=closed,remat=TRUE,scan_unroll=2") == {
        "ops": "plain,norm=closed", "batch": None,
        "model": {"remat": True, "scan_unroll": 2},
    }  # fmt: skip
    assert gpu_bench.parse_variant("remat=true")["ops"] == "auto"
    with pytest.raises(ValueError, match="'stem_conv' is not key=value"):
        gpu_bench.parse_variant("stem_conv")
    with pytest.raises(ValueError, match="stem_s2d is now the ops field 'stem_conv'"):
        gpu_bench.parse_variant("stem_s2d=false")
    with pytest.raises(ValueError, match=r"ops\.norm='pallas' is not one of"):
        gpu_bench.parse_variant("norm=pallas")


def test_gpu_sh_default_variants_parse():
    """gpu.sh's default variants are valid: found here, not on the GPU."""
    root = Path(__file__).parents[2] / "experiments/benchmarks/gpu"
    specs = (root / "gpu.sh").read_text().split("variants=(", 2)[2].split(")", 1)[0].split()
    assert "norm=flax" in specs and "default" in specs, specs
    for spec in specs:
        gpu_bench.parse_variant(spec)


def test_table_mfu_ratio_and_failures(tmp_path):
    def row(impl, img_s, **kw):
        return {"impl": impl, "batch": 256, "step_s": 256 / img_s, "img_s": img_s,
                "compile_s": 10.0, "device": "NVIDIA H200", **kw}  # fmt: skip

    ops = Ops(norm="closed", fuse_relu=True).as_dict()
    rows = [
        row("resflax", 7500.0, matmul_flops=800e12, jax="0.11.2", execution={"ops": ops}),
        row("torch.compile", 6250.0, matmul_flops=790e12, torch="2.11.0"),
        {"impl": "resflax (conv=dot)", "error": "aborted"},
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    gpu_bench.table(str(path), str(tmp_path / "out.md"))
    text = (tmp_path / "out.md").read_text()
    mfu = 7500 * gpu_bench.RESNET50_MACS * 6 / 989.4e12
    assert f"| resflax | 256 | 7500 | 34.1 | 10.0 | {100 * mfu:.1f}% |" in text
    assert "resflax / torch.compile at batch 256: 1.20x" in text
    assert "vs the 7,500 img/s target (set for an H100): 1.00x" in text
    assert "| resflax (conv=dot) | failed: aborted |" in text
    assert "800 TFLOP/s (jax), 790 TFLOP/s (torch)" in text
    assert "as resolved on this device): resflax: norm=closed, fuse_relu=True." in text


@pytest.mark.parametrize(
    "name, kind",
    [
        ("input_reduce_select_fusion.3", "XLA reductions"),
        ("loop_maximum_fusion_2", "XLA elementwise"),
        ("nvjet_sm90_tst_128x128_64x6_1x2_h_bz_splitK_NTT", "cuBLAS"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "cuDNN"),
        ("void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop>", "cuDNN"),
        ("MemcpyD2D", "other"),
    ],
)
def test_kernel_kinds(name, kind):
    assert kernel_kind(name).startswith(kind)


def test_gpu_flags_candidates_are_flags_this_jaxlib_knows():
    """An unknown flag in XLA_FLAGS aborts the process: found here, not in the minutes of a
    lent GPU. The GPU flags are parsed by the CPU jaxlib too."""
    script = (Path(__file__).parents[2] / "experiments/benchmarks/gpu/gpu_flags.sh").read_text()
    block = script.split("candidates=(", 1)[1].split(")", 1)[0]
    flags = sorted({f for line in block.split('"')[1::2] for f in line.split()})
    assert len(flags) >= 2 and all(f.startswith("--xla_gpu_") for f in flags), flags
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.numpy.ones(2).sum())"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "2.0", done.stderr[-2000:]
    env["XLA_FLAGS"] += " --xla_gpu_no_such_flag=true"  # the check itself can fail
    done = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.ones(2)"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "no_such_flag" in done.stderr
