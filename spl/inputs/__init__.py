"""The input pipeline's phases, one module each.

`spl.input_pipeline` assembles them:

  features  the names of what a batch holds (VIDEO, LABEL, ...)
  options   AugmentationOptions, the knobs of `make_dataset`, and their checks
  decode    parse and validate a record; decode a JPEG window (Model Garden's
            Decoder)
  sample    which frames (temporal sampling) and which window of them
            (spatial sampling: training scale jitter + crop, evaluation crops)
  geometry  the one geometry step of both pixel paths: window -> decoded
            frames -> flip (training) or cut views (evaluation)
  pixels    flip, colour jitter, clip and normalisation on the host
  finish    the same pixel work on the accelerator, after batching
            (`device_finishing`; Model Garden's PostBatchProcessor)
"""
