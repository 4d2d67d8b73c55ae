# A quantization job gives the same bytes on 1 and 3 CPU threads (GPTQ, AWQ, SmoothQuant, FP8).
qd_c_test(test-determinism LABELS unit SOURCES unit/test-determinism.c LIBS qd_quantizers)
