"""What a training step is made of: the LightningModule (module: SegmentationModule, build_module, load_module),
its losses, metrics, parameter groups, learning-rate schedules and inference modes."""
