"""Tests that need real text: SmolLM2-135M-Instruct's real weights, through the one `smollm2_swarm` a run starts."""
