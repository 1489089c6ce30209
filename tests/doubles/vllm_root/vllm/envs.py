"""Double of vllm.envs: the one variable the MoE path reads."""

VLLM_FUSED_MOE_CHUNK_SIZE = 16 * 1024
