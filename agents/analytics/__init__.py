"""agents/analytics"""
