# chatd's built-in moderators, found like any other through Twisted's plugin
# system (chatd.moderation.IModeratorFactory).
from chatd.moderation.words import BannedWordsFactory

banned_words = BannedWordsFactory()
