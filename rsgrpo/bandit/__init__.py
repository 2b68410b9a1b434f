"""bandit stage"""
