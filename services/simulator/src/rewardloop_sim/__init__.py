"""rewardloop user simulator: the serving layer for the local stack and the tests."""
