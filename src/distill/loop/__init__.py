"""The loop layer: the `Trainer` (`distill.loop.trainer`, the one training loop), its parts
(optimizer and schedule, random state, non-finite guard, batch feed, placement, resume
checkpoints, validation, progress, loss sums) and the teacher-output cache (`cache`,
`cache_keys`)."""
