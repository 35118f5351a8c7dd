"""streams/contract"""
