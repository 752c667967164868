"""Gin registrations of CPD: pre-training and evaluation (STYLE rule 9).

CPD's gin files (`runs/cpd_pretrain*.gin`, `tiny.gin`) start with `import
cpd.configurables`, which registers the pre-training job for `spl.main`
(`job.fn = @cpd_run`), its losses, curriculum and text encoders.

The library modules stay gin-free; `python -m cpd.evaluate` imports this
module and parses `DEFAULT_BINDINGS` before the user's gin files and
bindings, so `knn_classify.k = 200` or `build_video_model.backbone =
'slowonly_r34'` configure the functions `run_protocol` calls. Arguments the
runner passes itself (features, labels, `num_classes`, `input_shape`,
`is_training`, `batch_size`, `repeat`, `drop_remainder`) must never be bound.
`make_dataset` is the trainer's registration (`spl.configurables`), so the
`eval/make_dataset` bindings of the run files apply here unchanged.
"""

import gin

from cpd import baselines
from cpd import curriculum as cpd_curriculum
from cpd import knn
from cpd import linear_probe
from cpd import nce as cpd_nce
from cpd import protocols
from cpd import trainer as cpd_trainer
from spl import configurables as spl_configurables

make_dataset = spl_configurables.make_dataset

# ---- CPD pre-training (cpd/trainer.py) ----
# The job. Set by `spl.main`: mode, model_dir, strategy, setup_done.
cpd_run = gin.external_configurable(cpd_trainer.run_cpd, name='cpd_run')
# Loss modules, bound as `cpd_run.loss_fn = @cross_modal_nce` (or
# @cpd_ranking_loss, @cpd_self_instance). Set by the trainer: num_rows, dim.
cross_modal_nce = gin.external_configurable(cpd_nce.CrossModalNCE,
                                            name='cross_modal_nce')
cpd_ranking_loss = gin.external_configurable(baselines.RankingLoss,
                                             name='cpd_ranking_loss')
cpd_self_instance = gin.external_configurable(baselines.VideoSelfInstance,
                                              name='cpd_self_instance')
cpd_curriculum_fn = gin.external_configurable(cpd_curriculum.Curriculum,
                                              name='cpd_curriculum')
# Text encoders, bound as `cpd_run.text_encoder_fn = @hf_text_encoder`.
word2vec_text_encoder = gin.external_configurable(
    cpd_trainer.word2vec_text_encoder, name='word2vec_text_encoder')
hf_text_encoder = gin.external_configurable(cpd_trainer.hf_text_encoder,
                                            name='hf_text_encoder')


# ---- Evaluation protocols (cpd/protocols.py; CLI cpd/evaluate.py) ----

run_protocol = gin.external_configurable(protocols.run_protocol,
                                         name='run_protocol')
build_video_model = gin.external_configurable(protocols.build_video_model,
                                              name='build_video_model')
build_text_fn = gin.external_configurable(protocols.build_text_fn,
                                          name='build_text_fn')
knn_classify = gin.external_configurable(knn.knn_classify,
                                         name='knn_classify')
linear_probe_fn = gin.external_configurable(linear_probe.linear_probe,
                                            name='linear_probe')

# The paper's frozen-feature views (4.2: "10 clips from each video and each clip
# contains 8 frames with 4 sampling stride"; one centre crop, as the paper
# names no crops) of the R34 clip (112^2); the experiment files (applied after
# these) set the rest, e.g. 224^2 for the R50.
DEFAULT_BINDINGS = (
    'run_protocol.video_model_fn = @build_video_model',
    'run_protocol.knn_fn = @knn_classify',
    'run_protocol.linear_fn = @linear_probe',
    'run_protocol.dataset_fn = @eval/make_dataset',
    'eval/make_dataset.num_frames = 8',
    'eval/make_dataset.stride = 4',
    'eval/make_dataset.crop_size = 112',
    'eval/make_dataset.num_test_clips = 10',
    'eval/make_dataset.num_test_crops = 1',
)
