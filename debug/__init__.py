"""One episode step by step: the debugger, checkpoint history, show, fork and replay."""
