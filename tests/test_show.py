"""`minilora.show`: whole objects and marked regions, never a slice of text; plain text outside a notebook."""
import pytest

from minilora.show import show, source_of
from minilora.train import Trainer


# region sample
def _sample(x):
    # region inner
    y = x + 1
    # endregion
    return y
# endregion


def test_a_whole_function_is_shown_without_its_region_markers(capsys):
    show(_sample)
    out = capsys.readouterr().out
    assert out.startswith("def _sample(x):") and "y = x + 1" in out and "return y" in out
    assert "# region" not in out and "# endregion" not in out


def test_a_region_is_cut_at_its_own_markers():
    assert source_of(_sample, region="inner") == "y = x + 1\n"


def test_a_module_region_keeps_nested_regions_whole():
    import tests.test_show as me
    text = source_of(me, region="sample")
    assert text.startswith("def _sample(x):") and text.rstrip().endswith("return y") and "region" not in text


def test_the_trainer_marks_its_accumulation_loop():
    text = source_of(Trainer.training_step, region="accumulate")
    assert text.startswith("k = a.gradient_accumulation_steps")  # dedented
    assert "backward()" in text and "unscale_" not in text and "optimizer.zero_grad" not in text


def test_a_missing_region_names_the_regions_there_are():
    with pytest.raises(ValueError, match="no '# region nope' marker; its regions are: inner"):
        source_of(_sample, region="nope")


def test_a_triton_kernel_shows_its_python_function():
    from minilora.kernels import rope
    assert source_of(rope._rope_kernel).lstrip().startswith(("@triton.jit", "def "))


def test_what_has_no_source_is_refused():
    with pytest.raises(TypeError, match="no source to show"):
        show(3)
    with pytest.raises(TypeError, match="one region of one object"):
        show(_sample, _sample, region="inner")
