"""agents/alerting"""
