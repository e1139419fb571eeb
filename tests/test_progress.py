"""Progress output: a bar on a terminal, whole lines with ETA otherwise (no carriage returns in logs)."""


def test_line_progress_prints_whole_lines_with_eta(capsys):
    from mst_single.progress import LineProgress, progress

    bar = progress(total=10, desc="fit", unit="steps", every_n=5)  # stderr is captured: not a terminal
    assert isinstance(bar, LineProgress)
    with bar:
        for _ in range(10):
            bar.set_postfix(loss="0.1234")
            bar.update(1)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 2
    assert lines[0].startswith("fit: 5/10 steps (50%), loss 0.1234, 0:00 elapsed, ETA 0:00")
    assert lines[1].startswith("fit: 10/10 steps (100%), loss 0.1234") and "ETA" not in lines[1]
    quiet = progress(range(3), desc="short", leave=False)
    assert list(quiet) == [0, 1, 2] and capsys.readouterr().err == ""  # a short step stays silent

    class Tty:
        def isatty(self):
            return True

        def write(self, s):
            pass

        def flush(self):
            pass

    from tqdm import tqdm

    assert isinstance(progress(total=3, file=Tty()), tqdm)


def test_lines_from_threads_never_run_into_each_other():
    """`ablate --jobs 2` reports from two threads; print() wrote each text and its newline apart, so a log
    read "...eval.json[8/24] ...". ``say`` writes whole lines, also from a ``LineProgress``."""
    import threading
    import time

    from mst_single.progress import LineProgress, say

    class Slow:  # a stream that lets another thread in between any two writes
        def __init__(self):
            self.parts = []

        def write(self, s):
            time.sleep(0.0002)
            self.parts.append(s)

        def flush(self):
            pass

    out = Slow()

    def talk(k):
        for i in range(40):
            say(f"thread {k} line {i}", out)
        bar = LineProgress(total=2, desc=f"bar {k}", file=out, every_n=1)
        bar.update(1)
        bar.update(1)
        bar.close()

    threads = [threading.Thread(target=talk, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.endswith("\n") and p.count("\n") == 1 for p in out.parts)  # one write per whole line
    lines = "".join(out.parts).splitlines()
    assert sorted(x for x in lines if x.startswith("thread")) == sorted(f"thread {k} line {i}" for k in range(4)
                                                                        for i in range(40))
    assert sum(x.startswith("bar ") for x in lines) == 8


def test_fit_off_a_terminal_logs_lines_not_a_bar(make_data, tmp_path, capfd):
    """Lightning's bar is asked for (enable_progress_bar true) but the output is not a terminal: the
    run logs whole lines (step/total, loss, ETA, validation) and not one carriage return."""
    from conftest import tiny_fit_args

    from mst_single.provenance import REPO_ROOT
    from mst_single.train import cli_main

    root = make_data(songs=4, seconds=3.0)
    args = tiny_fit_args(root, tmp_path / "runs", epochs=2) + ["--trainer.enable_progress_bar", "true",
                                                                "--run_name", "r"]
    assert cli_main(["fit", "-c", str(REPO_ROOT / "configs" / "approach2.yaml"), *args]) == 0
    out = "".join(capfd.readouterr())
    assert "\r" not in out
    assert "fit: training from step 0 to 4" in out and "fit: 4/4 steps (100%), loss " in out
    assert "validation after step 2: val/l1 " in out
