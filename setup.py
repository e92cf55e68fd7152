from setuptools import find_packages, setup

setup(
    name="vlmzoo",
    version="0.1.0",
    description="Vision-language model architectures as native Hugging Face transformers models",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vlmzoo", "vlmzoo.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        # the floor is the oldest release CI tests (vlmzoo/versions.py checks it at import)
        "transformers>=5.24,<6",
        "accelerate>=1.0",
        "safetensors",
        "huggingface_hub",
        "tokenizers",
        "peft>=0.15",
        "pillow",
        "numpy",
        "packaging",
        "tqdm",
    ],
    extras_require={"test": ["pytest", "hypothesis"]},
    entry_points={"console_scripts": ["vlmzoo=vlmzoo.cli:main"]},
)
