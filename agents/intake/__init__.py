"""agents/intake"""
