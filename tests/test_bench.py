"""`segplank bench`'s case selection and its report of a case that fails in its own process."""
import pytest
import torch

from segplank.bench import run_bench


def test_unknown_case_is_refused_with_the_case_names(tmp_path, tiny_checkpoint):
    with pytest.raises(ValueError, match="no bench case named \\['densest'\\].*'dense'"):
        run_bench(tiny_checkpoint, tmp_path, sparse_frames=1, dense_frames=1, cases=("densest",))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_a_case_failing_in_its_process_is_reported_not_waited_for(tmp_path, tiny_checkpoint):
    """The case runs in a spawned process: its error (here --device cuda without a GPU) comes
    back to the caller as one line, where the parent would otherwise wait for a result forever."""
    with pytest.raises(RuntimeError, match="bench case 'sparse' failed: RunError: --device cuda was asked for"):
        run_bench(tiny_checkpoint, tmp_path, sparse_frames=1, dense_frames=1, cases=("sparse",), device="cuda")


def test_heap_trimmer_trims_at_most_once_per_interval():
    from segplank.engine.memory import HeapTrimmer

    calls = []
    t = HeapTrimmer(every_s=3600)
    t._trim = calls.append  # the C library's malloc_trim where there is one
    for _ in range(5):
        t()
    assert calls == [0]


def test_nested_stages_count_each_second_once_in_the_innermost():
    import time

    from segplank.engine.timing import timed

    clock: dict[str, float] = {}
    other: dict[str, float] = {}
    t0 = time.perf_counter()
    with timed(clock, "stitch"):
        time.sleep(0.02)
        with timed(other, "write"):  # another clock's block does not come off this one's
            with timed(clock, "measure"):
                time.sleep(0.05)
                with timed(clock, "classify"):
                    time.sleep(0.1)
    wall = time.perf_counter() - t0
    # each block's own sleep, not its inner blocks' (which would put stitch at ≥ 0.17)
    assert clock["classify"] >= 0.1 and 0.05 <= clock["measure"] < 0.1 and 0.02 <= clock["stitch"] < 0.05
    assert sum(clock.values()) == pytest.approx(wall, abs=2e-3)
    assert other["write"] >= 0.15
    with timed(None, "model"):  # no clock: nothing counted, nothing raised
        pass
