"""plan stage"""
