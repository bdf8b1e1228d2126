"""Small decoder-only LLMs on device: re-authoring for LiteRT, sessions per runtime, generation and LLM measurements."""
