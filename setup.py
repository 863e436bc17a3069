"""Packaging for mmvmamba (the OpenMMLab plugin) and mmvmamba_kernels (the SS2D kernels in kernels/)."""
import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# What OpenMMLab's `mim` reads from an installed package's `.mim` folder: configs (`mim train|test mmvmamba
# CONFIG`), the tools it runs (tools/train.py, tools/test.py) and the model index with its metafiles (`mim search`).
MIM_FILES = ('configs', 'tools', 'model-index.yml')


class BuildPyWithMim(build_py):
    """``build_py`` that also copies :data:`MIM_FILES` into the built package as ``mmvmamba/.mim/``.

    Wheels and regular installs get the copy. An editable install runs from the checkout, where the files already
    are; mim cannot locate an editable package's folder, so it is used with a regular install.
    """

    def run(self):
        super().run()
        if self.editable_mode:
            return
        target = Path(self.build_lib) / 'mmvmamba' / '.mim'
        shutil.rmtree(target, ignore_errors=True)  # a stale copy from an earlier build in the same tree
        target.mkdir(parents=True)
        for name in MIM_FILES:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, target / name, ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))
            else:
                shutil.copy2(source, target / name)


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
    cmdclass={'build_py': BuildPyWithMim},
    zip_safe=False,
)
