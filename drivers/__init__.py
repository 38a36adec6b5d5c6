"""Reference accel drivers: habana_like (habanalabs/Gaudi) and kfd_like (amdkfd)."""
