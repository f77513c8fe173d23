"""The stages and the other jobs, one module each, named as the job and holding a function of the
same name: shard, stage1, codes, stage2, sample, convert, tune, pipeline (every stage in order),
report (the page the pipeline and sample jobs write), models (registry lookups), ui and
make_demo_data. train/ is the training loop and driver that stage1, stage2 and tune share.
jobs/*.py parse arguments and call these."""
