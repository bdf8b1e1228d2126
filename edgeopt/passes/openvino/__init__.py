"""Passes on OpenVINO IR: post-training INT8 through NNCF."""
