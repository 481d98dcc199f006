"""Deciding, once per model, what stays resident and how the rest is read: the memory the machine can give
(memory_guard), which blocks stay in RAM (residency), the read path (read_choice, from the disk's readers
measured beside compute in disk_profile), all gathered by one function into the frozen ModelPlan that the
loader, `info` and the app's budget checks read (model_plan)."""
