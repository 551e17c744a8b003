"""virtio_sim/orchestration/attacks: the hostile corpus, fuzzing, amplification, the wire corpus under
load."""
