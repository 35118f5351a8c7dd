"""agents/orders"""
