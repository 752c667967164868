"""Names of the features a batch of `spl.input_pipeline.make_dataset` holds."""

VIDEO = 'video'
LABEL = 'label'
CLIP_INDEX = 'clip_index'
CLIP_KEY = 'clip_key'
VIDEO_ID = 'video_id'
CAPTION = 'caption'
# With `device_finishing`: per-clip parameters of `finish_video`.
VIDEO_FINISH = 'video_finish'

# ImageNet statistics of [0, 1] RGB pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# ImageNet statistics of [0, 1] RGB pixels.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
