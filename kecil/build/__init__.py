"""The top library floor: building a deployable model by composing the floors below (quantize from
compress, quality from eval, measurements from infer) — `kecil fit` today, the pipeline later.

Nothing below imports from here; the CLI calls in from above.
"""
