"""kecil eval: does this small model meet my needs, and which variant fits my memory?"""
