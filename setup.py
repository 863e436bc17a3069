"""Packaging for mmvmamba (the OpenMMLab plugin) and mmvmamba_kernels (the SS2D kernels in kernels/)."""
from pathlib import Path

from setuptools import find_packages, setup


def read_version() -> str:
    namespace: dict = {}
    exec((Path(__file__).parent / 'mmvmamba' / 'version.py').read_text(), namespace)
    return namespace['__version__']


setup(
    name='mmvmamba',
    version=read_version(),
    description='VMamba (Visual State Space Model) backbones for MMDetection and MMSegmentation',
    long_description=(Path(__file__).parent / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.10',
    # kernels/ installs as `mmvmamba_kernels`: a top-level `kernels` would clash with an unrelated PyPI package.
    packages=find_packages(include=['mmvmamba', 'mmvmamba.*']) + ['mmvmamba_kernels'],
    package_dir={'mmvmamba_kernels': 'kernels'},
    package_data={'mmvmamba_kernels': ['README.md']},
    install_requires=['torch>=2.1', 'mmengine>=0.10.0,<1.0', 'numpy'],
    extras_require={
        'triton': ['triton>=3.0'],
        'det': ['mmcv>=2.0.0,<2.2.0', 'mmdet>=3.0.0,<3.4.0'],
        'seg': ['mmcv>=2.0.0,<2.2.0', 'mmsegmentation>=1.0.0,<1.3.0', 'ftfy', 'regex'],
        'deploy': ['onnx>=1.23', 'onnxscript>=0.7', 'onnxruntime>=1.31'],  # the versions tested (requirements.txt)
        'tests': ['pytest'],
    },
    zip_safe=False,
)
