"""System figures of a model for `kecil eval` (size on disk, peak RAM, load time, prompt and decode
speed): measured in a fresh process by kecil.infer.measure, the same measurement `kecil quantize`'s
report and `kecil fit` use."""

from kecil.infer.measure import SystemFigures, measure, peak_rss_bytes, size_on_disk

__all__ = ["SystemFigures", "measure", "peak_rss_bytes", "size_on_disk"]
