from setuptools import find_packages, setup


def _reqs(path):
    with open(path) as f:
        return [l.split("#")[0].strip() for l in f if l.split("#")[0].strip()]


setup(
    name="mindspeed-ms",
    version="0.1.0",
    description="MindSpore-native Qwen2-VL fine-tuning, compatible with MindSpeed-MM commands, configs and checkpoints",
    packages=find_packages(include=["mindspeed_ms", "mindspeed_ms.*", "auto_convert", "auto_convert.*"]),
    package_data={"auto_convert": ["*.json", "*.yaml"], "mindspeed_ms": ["**/*.json", "**/*.jinja"]},
    python_requires=">=3.9,<3.12",
    install_requires=_reqs("requirements.txt"),
    extras_require={"test": _reqs("requirements-test.txt")},
    entry_points={"console_scripts": ["mm-convert=mindspeed_ms.checkpoint.cli:main"]},
)
