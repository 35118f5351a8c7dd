"""streams/engine"""
