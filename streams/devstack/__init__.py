"""streams/devstack"""
