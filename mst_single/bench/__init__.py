"""Side-by-side performance benchmark: our chain, loss, training step, data loading and `mix` vs
stock dasp-pytorch / auraloss.

    python -m mst_single.bench [--out bench/results.json] [--device cpu|cuda] [--repeats 5] [--quick]

Everything is measured in ONE process, one figure after the other on the same inputs, so that the
machine's load affects both sides alike. Each figure is the median (and inter-quartile range) of
``--repeats`` timed runs after one untimed warm-up run, except where a stock function is too slow
to repeat (dasp-pytorch's ``noise_shaped_reverberation`` backward: ~3 min for batch 4 x 4 s);
those are measured fewer times and the JSON says so (``n``, ``note``). On CUDA every run is
synchronised and the peak GPU memory recorded.

Sections (JSON keys, printed as one table), one module each:
- ``stages`` (`stages.py`): gain, EQ, compressor, reverb and the loss, forward (autograd on, as in
  training) and forward + backward, ours vs stock, batch 4 x 4 s mono at 48 kHz (stereo for the
  loss), with the max abs difference of the outputs where the math is the same (``same_math``).
- ``train_step`` (`train_step.py`): a whole step (loudness normalisation, controller, full chain,
  loss, backward, optimiser step) per approach: ours (`VocalMST.training_step`) vs the same step
  on stock dasp-pytorch stages + auraloss, vs upstream Diff-MST's one-track step when
  ``Diff-MST/`` is checked out with the patch series applied (`upstream.py`); steps and examples
  per second.
- ``data`` (`data.py`): the training DataLoader alone, segments per second with 0, 2 and 4
  workers at the training step's batch and segment length, next to the step time.
- ``mix`` / ``mix_memory`` (`mix.py`): `mix_file` on a synthesised 3-minute vocal per approach
  (wall time, real-time factor) and its peak resident memory on a 1-hour vocal (subprocess).
- ``targets`` (`report.py`): met / not met, each with a profile of what bounds it when not met.

`core.py` holds `Config` and the timing helpers, `signals.py` the test signals, `stock.py` the
stock chain, `cli.py` the command line.
"""
from mst_single.bench.cli import add_arguments, config_from_args, main, run
from mst_single.bench.core import (GIB, SAMPLE_RATE, STAGES, Config, profile_call, summarize,
                                   time_it)
from mst_single.bench.signals import batch_audio, vocal_like, write_long_wav
from mst_single.bench.stock import STOCK_PARAMS, STOCK_REVERB_NAMES, stock_denormalize, stock_param_names
from mst_single.bench.upstream import upstream_measure, upstream_status

__all__ = ["add_arguments", "config_from_args", "main", "run", "GIB", "SAMPLE_RATE", "STAGES", "Config",
           "profile_call", "summarize", "time_it", "batch_audio", "vocal_like", "write_long_wav", "STOCK_PARAMS",
           "STOCK_REVERB_NAMES", "stock_denormalize", "stock_param_names", "upstream_measure", "upstream_status"]
