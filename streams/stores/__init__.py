"""streams/stores"""
