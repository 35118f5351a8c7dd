"""agents/routing"""
