"""agents/inventory"""
