"""virtio_sim/attacks: the hostile corpus, fuzzing, amplification, the wire corpus under load."""
