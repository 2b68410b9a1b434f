"""prepare stage"""
