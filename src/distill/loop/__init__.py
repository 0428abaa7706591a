"""The parts of the training loop (`distill.trainer.Trainer` holds the loop itself): the
optimizer and LR schedule (`optim`), seeding and the random state of an exact resume
(`rng`), the non-finite guard (`guard`) and the batch feed with its prefetching (`feed`)."""
