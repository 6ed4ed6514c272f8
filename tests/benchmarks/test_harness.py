"""The benchmarks' shared parts: execution policies written as strings (`parse_ops`), and the
train-step benchmark's implementations and their environments."""

import re

import pytest

from experiments.benchmarks.cpu import compile_vs_depth, train_step
from experiments.benchmarks.harness import step_impls
from experiments.benchmarks.harness.common import ROOT, parse_ops, parse_ops_spec
from resflax.ops import Ops, auto, plain


def test_root_is_the_checkout():
    assert (ROOT / "experiments" / "benchmarks" / "harness" / "common.py").is_file()


def test_parse_ops_bases_and_fields():
    cpu = {"backend": "cpu", "devices": 1}
    assert parse_ops("plain") == plain() == Ops()
    assert parse_ops("auto", **cpu) == auto(**cpu)
    assert parse_ops("auto,conv=dot", **cpu) == auto(**cpu).replace(conv="dot")
    # Without a base: `default`'s; later items win; fuse_relu is a bool.
    assert parse_ops("norm=closed,fuse_relu=TRUE", default="plain") == Ops(
        norm="closed", fuse_relu=True
    )
    assert parse_ops("plain,conv=dot,conv=onednn") == Ops(conv="onednn")
    gpu = parse_ops("auto,stem_conv=lax", backend="gpu", devices=1)
    assert gpu == auto(backend="gpu", devices=1).replace(stem_conv="lax")
    assert parse_ops_spec(" auto , pool=lax ") == ("auto", {"pool": "lax"})
    assert parse_ops_spec("") == ("auto", {})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("fast", "base 'fast' is not one of"),
        ("plain,conv", "'conv' is not field=value"),
        ("plain,conv_grad=dot", "no field(s) ['conv_grad']"),
        ("plain,norm=pallas", "ops.norm='pallas' is not one of"),
        ("plain,fuse_relu=yes", "fuse_relu='yes' must be true or false"),
    ],
)
def test_parse_ops_errors_name_the_bad_item_in_one_line(spec, message):
    with pytest.raises(ValueError, match=".*".join(map(re.escape, [spec, message]))) as e:
        parse_ops(spec)
    assert "\n" not in str(e.value)


def test_policy_impls_are_selectable_but_not_default():
    for impl in train_step.POLICY_IMPLS + train_step.BF16_IMPLS:
        assert impl in train_step.LABELS and impl in step_impls.IMPLS
        assert impl not in train_step.IMPLS
    assert train_step.IMPLS[0] == "resflax"
    for impl in ("resflax", "resflax_plain", "resflax_lib", "resflax_lib_auto"):
        env = train_step.env_for(impl)
        assert env["XLA_FLAGS"] == "" and env["RESFLAX_OPS"] == ""
        assert env["RESFLAX_MODEL_OVERRIDES"] == "{}"
    assert (ROOT / train_step.CHILD).is_file()


def test_compile_layouts_are_policies_on_top_of_ops():
    assert compile_vs_depth.layout_ops("auto", "unrolled") == "auto"
    assert compile_vs_depth.layout_ops("plain", "scan_lax_grad") == "plain,conv=lax"
    for layout in compile_vs_depth.LAYOUTS:
        parse_ops_spec(compile_vs_depth.layout_ops("auto", layout))
