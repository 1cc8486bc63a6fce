from setuptools import find_packages, setup

setup(
    name="hfssl",
    version="0.1.0",
    description="Self-supervised pretraining (MLM, wav2vec 2.0, HuBERT) and downstream evaluation on transformers + Accelerate",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hfssl", "hfssl.*"]),
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.11,<2.12",
        # torchaudio 2.11.1's wheel does not load against torch 2.11.0
        # ("undefined symbol: torch_exception_get_what_without_backtrace"), so stay on 2.11.0.
        "torchaudio==2.11.0",
        "transformers>=5.0,<6",
        "datasets>=4.0,<6",
        "tokenizers>=0.22,<0.24",
        "accelerate>=1.10,<2",
        "evaluate>=0.4.6,<0.5",
        "soundfile>=0.13,<1",
        "huggingface_hub>=1.0,<3",
        "pyyaml>=6",
        "xxhash>=3",  # checkpoint content hashes (also a dependency of datasets)
        "pyarrow>=15",  # packed text blocks and streamed parquet (also a dependency of datasets)
        "safetensors>=0.4.3",  # checkpoints and the BEST-RQ / probe heads (also a dependency of transformers)
        "matplotlib>=3.8",
        "tqdm",
        "numpy",
    ],
    extras_require={"test": ["pytest>=8", "tensorboard", "jiwer>=3.0,<5"], "tensorboard": ["tensorboard"]},
)
