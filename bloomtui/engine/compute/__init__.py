"""BLOOM's math and the kernels under it: the block and head (model), the matrix products for every weight
format (matmul, native and its C source), and what this CPU measures fastest (cpu_profile, kept in
profile_cache) and how many of its cores are free (cpu_share). Reads weights/ only: it never touches a file
of the model."""
