"""Speech models end to end: audio input, Whisper (encoder + decoder with KV cache) on each runtime, WER and RTF."""
