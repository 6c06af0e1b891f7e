"""mobitune: MobileNetV2 transfer learning on CIFAR-10 with DVC, Prefect and S3."""

__version__ = "0.1.0"
